// maap-finetune: an Azure Machine Learning workspace and the compute clusters the pipeline runs on.
//
//   az deployment group create --resource-group <rg> --template-file infra/main.bicep \
//     --parameters @infra/main.parameters.json
//
// Creates: Log Analytics + Application Insights, a storage account, a key vault and a container
// registry (the workspace's dependencies), the workspace (system-assigned identity), and two
// AmlCompute clusters (GPU for fine-tune/evaluate, CPU for data prep/register) that scale to
// zero nodes when idle, have a managed identity, and accept no public SSH.
//
// Security scan: tests/infra/test_security_scan.py runs checkov on this folder. Every skipped
// check is listed on the resource it concerns, as `checkov:skip=<id>: <reason>`.

targetScope = 'resourceGroup'

@description('Azure region for every resource.')
param location string = resourceGroup().location

@description('Short prefix for resource names (letters and digits, 3-12 characters).')
@minLength(3)
@maxLength(12)
param prefix string = 'maapft'

@description('Name of the Azure Machine Learning workspace.')
param workspaceName string = '${prefix}-ws'

@description('Name of the GPU cluster (fine-tune and evaluate run here).')
param gpuClusterName string = 'gpu-cluster'

@description('VM size of the GPU cluster nodes.')
param gpuVmSize string = 'Standard_NC24ads_A100_v4'

@description('Most GPU nodes the cluster scales out to.')
@minValue(1)
param gpuMaxNodes int = 2

@description('Name of the CPU cluster (data prep and register run here).')
param cpuClusterName string = 'cpu-cluster'

@description('VM size of the CPU cluster nodes.')
param cpuVmSize string = 'Standard_DS3_v2'

@description('Most CPU nodes the cluster scales out to.')
@minValue(1)
param cpuMaxNodes int = 2

@description('Dedicated nodes, or low-priority nodes (much cheaper, may be preempted).')
@allowed([
  'Dedicated'
  'LowPriority'
])
param vmPriority string = 'Dedicated'

@description('Seconds an idle node waits before the cluster scales it down (120 to 86400).')
@minValue(120)
@maxValue(86400)
param idleSecondsBeforeScaleDown int = 1800

@description('Whether studio, the CLI and the SDK reach the workspace over the public internet. Disabled needs private endpoints, which this template does not create.')
@allowed([
  'Enabled'
  'Disabled'
])
param workspacePublicNetworkAccess string = 'Enabled'

@description('Tags put on every resource.')
param tags object = {
  project: 'maap-finetune'
}

var suffix = uniqueString(resourceGroup().id, prefix)
var storageName = toLower(take('${prefix}st${suffix}', 24))
var keyVaultName = take('${prefix}-kv-${suffix}', 24)
var registryName = toLower(take('${prefix}cr${suffix}', 50))
var idleTime = 'PT${idleSecondsBeforeScaleDown}S'

resource logs 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: '${prefix}-logs'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${prefix}-appi'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-01-01' = {
  // checkov:skip=CKV_AZURE_35: the default network rule stays Allow: Azure ML compute and studio reach the default datastore over its public endpoint unless the workspace uses private endpoints (see workspacePublicNetworkAccess); anonymous blob access is off and TLS 1.2 is required.
  // checkov:skip=CKV_AZURE_43: the name is computed (prefix + 'st' + uniqueString, lowercased, at most 24 characters); checkov cannot evaluate Bicep functions.
  // checkov:skip=CKV_AZURE_206: replication is a cost choice: LRS by default; training data and models are reproducible from their sources and the model registry.
  name: storageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: true
    minimumTlsVersion: 'TLS1_2'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    supportsHttpsTrafficOnly: true
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_189: public network access stays on: without private endpoints the workspace and its compute reach the vault over its public endpoint; only the workspace identity has an access policy.
  // checkov:skip=CKV_AZURE_109: the firewall's default action stays Allow for the same reason as CKV_AZURE_189; only the workspace identity has an access policy.
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Access policies, as Azure ML expects: the service adds one for the workspace's identity when
    // it creates the workspace; nothing else gets access here.
    enableRbacAuthorization: false
    accessPolicies: []
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  // checkov:skip=CKV_AZURE_139: Azure ML builds environment images and compute pulls them over the public endpoint unless the workspace uses private endpoints; the admin user is disabled, access is by Entra ID.
  // checkov:skip=CKV_AZURE_166: quarantine needs the Premium SKU and a scanner that releases images; Azure ML would wait forever on quarantined images.
  name: registryName
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    adminUserEnabled: false
    anonymousPullEnabled: false
    publicNetworkAccess: 'Enabled'
  }
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' = {
  // checkov:skip=CKV_AZURE_243: private endpoints need a VNet and private DNS zones, which this template leaves to the network team; public access is the workspacePublicNetworkAccess parameter.
  name: workspaceName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  sku: {
    name: 'Basic'
    tier: 'Basic'
  }
  properties: {
    friendlyName: workspaceName
    description: 'maap-finetune: fine-tune open LLMs on your own compute.'
    storageAccount: storage.id
    keyVault: keyVault.id
    containerRegistry: registry.id
    applicationInsights: appInsights.id
    publicNetworkAccess: workspacePublicNetworkAccess
    v1LegacyMode: false
  }
}

resource gpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = {
  parent: workspace
  name: gpuClusterName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    computeType: 'AmlCompute'
    description: 'GPU nodes for maap-finetune fine-tune and evaluate steps.'
    disableLocalAuth: true
    properties: {
      vmSize: gpuVmSize
      vmPriority: vmPriority
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      enableNodePublicIp: true
      isolatedNetwork: false
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: gpuMaxNodes
        nodeIdleTimeBeforeScaleDown: idleTime
      }
    }
  }
}

resource cpuCluster 'Microsoft.MachineLearningServices/workspaces/computes@2024-04-01' = {
  parent: workspace
  name: cpuClusterName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    computeType: 'AmlCompute'
    description: 'CPU nodes for maap-finetune data prep and register steps.'
    disableLocalAuth: true
    properties: {
      vmSize: cpuVmSize
      vmPriority: vmPriority
      osType: 'Linux'
      remoteLoginPortPublicAccess: 'Disabled'
      enableNodePublicIp: true
      isolatedNetwork: false
      scaleSettings: {
        minNodeCount: 0
        maxNodeCount: cpuMaxNodes
        nodeIdleTimeBeforeScaleDown: idleTime
      }
    }
  }
}

output workspaceName string = workspace.name
output workspaceId string = workspace.id
output gpuClusterName string = gpuCluster.name
output cpuClusterName string = cpuCluster.name
output storageAccountName string = storage.name
output keyVaultName string = keyVault.name
output containerRegistryName string = registry.name
output applicationInsightsName string = appInsights.name

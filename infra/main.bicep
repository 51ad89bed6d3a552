// maap-finetune: an Azure Machine Learning workspace and the compute clusters the pipeline runs on.
//
//   az deployment group create --resource-group <rg> --template-file infra/main.bicep \
//     --parameters @infra/main.parameters.json
//
// Creates: Log Analytics + Application Insights, a storage account, a key vault and a container
// registry (the workspace's dependencies), the workspace (system-assigned identity), and two
// AmlCompute clusters (GPU for fine-tune/evaluate, CPU for data prep/register/export ONNX) that scale to
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

@description('Name of the CPU cluster (data prep, register and export ONNX run here).')
param cpuClusterName string = 'cpu-cluster'

@description('VM size of the CPU cluster nodes: it holds Export ONNX of Phi-3-mini with 20% to spare (infra/README.md, "CPU cluster size"; tests/infra/test_cpu_cluster_size.py).')
param cpuVmSize string = 'Standard_E8ds_v5'

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

@description('Appended to the key vault name (letters and digits, at most 6; empty keeps the default name). Purge protection keeps a deleted vault\'s name reserved for 90 days: to recreate the deployment in the same resource group within that time, set a new suffix.')
@maxLength(6)
param keyVaultNameSuffix string = ''

@description('Name of an Azure ML registry in this resource group that Register publishes to, or whose models fine-tune reads; the cluster identities get "AzureML Registry User" on it. Empty: no registry role.')
param modelRegistryName string = ''

@description('Tags put on every resource.')
param tags object = {
  project: 'maap-finetune'
}

var suffix = uniqueString(resourceGroup().id, prefix)
var storageName = toLower(take('${prefix}st${suffix}', 24))
var defaultKeyVaultName = take('${prefix}-kv-${suffix}', 24)
var keyVaultName = empty(keyVaultNameSuffix) ? defaultKeyVaultName : '${take(defaultKeyVaultName, 23 - length(keyVaultNameSuffix))}-${keyVaultNameSuffix}'
// Built-in role definition ids, from Microsoft Learn "Azure built-in roles"
// (learn.microsoft.com/azure/role-based-access-control/built-in-roles, AI + machine learning,
// Security and Storage sections). infra/README.md says why each is granted.
var roles = {
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  azureMLRegistryUser: '1823dd4f-9b8c-4ab6-ab4e-7397a3684615'
  keyVaultAdministrator: '00482a5a-887f-4fb3-b363-3b7fe8e74483'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
}
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
  // checkov:skip=CKV_AZURE_189: public network access stays on: without private endpoints the workspace and its compute reach the vault over its public endpoint; access is by Azure RBAC, granted only to the workspace identity.
  // checkov:skip=CKV_AZURE_109: the firewall's default action stays Allow for the same reason as CKV_AZURE_189; access is by Azure RBAC, granted only to the workspace identity.
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // Azure RBAC, not access policies: an access-policy list here, even an empty one, would wipe on every redeploy
    // the policy Azure ML adds for the workspace identity. The role assignment below grants it instead.
    enableRbacAuthorization: true
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

// The workspace identity manages the secrets Azure ML keeps in the vault (connections, datastore keys).
resource workspaceKeyVaultAdmin 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, workspace.id, roles.keyVaultAdministrator)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultAdministrator)
    principalId: workspace.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// Register with --register-identity managed runs as the cluster's identity: it lists and creates models
// and reads job outputs in the workspace (AzureML Data Scientist), and fine-tune reads base models and data
// from the workspace's storage (Storage Blob Data Reader).
resource clusterDataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (cluster, i) in [gpuClusterName, cpuClusterName]: {
  name: guid(workspace.id, cluster, roles.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLDataScientist)
    principalId: i == 0 ? gpuCluster.identity.principalId : cpuCluster.identity.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource clusterBlobReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (cluster, i) in [gpuClusterName, cpuClusterName]: {
  name: guid(storage.id, workspace.id, cluster, roles.storageBlobDataReader)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: i == 0 ? gpuCluster.identity.principalId : cpuCluster.identity.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource modelRegistry 'Microsoft.MachineLearningServices/registries@2024-04-01' existing = if (!empty(modelRegistryName)) {
  name: empty(modelRegistryName) ? 'none' : modelRegistryName
}

resource clusterRegistryUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (cluster, i) in [gpuClusterName, cpuClusterName]: if (!empty(modelRegistryName)) {
  name: guid(resourceGroup().id, modelRegistryName, workspace.id, cluster, roles.azureMLRegistryUser)
  scope: modelRegistry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.azureMLRegistryUser)
    principalId: i == 0 ? gpuCluster.identity.principalId : cpuCluster.identity.principalId
    principalType: 'ServicePrincipal'
  }
}]

output workspaceName string = workspace.name
output workspaceId string = workspace.id
output gpuClusterName string = gpuCluster.name
output cpuClusterName string = cpuCluster.name
output storageAccountName string = storage.name
output keyVaultName string = keyVault.name
output containerRegistryName string = registry.name
output applicationInsightsName string = appInsights.name

"""Runtime library shared by the maap-finetune Azure ML components.

Each component's snapshot carries this package through `additional_includes`, so the
same code runs inside an Azure ML job, under the local runner and in the tests.
"""

__version__ = "0.1.0"

"""Moving work: the Celery side (``dispatch``: the app settings shared with the workers, publishing
micro-batches of job ids), the ``producer`` (a plan written to the ledger, then published), the
``localfarm`` (a private Redis and supervised workers under the farm home), periodic
``maintenance`` (reaping lost leases, republishing what no message carries) and the ``retry``
policy.

May import: ``farm.config``, ``farm.errors``, ``farm.jobs``, ``farm.models``, ``farm.storage``;
celery and kombu only in ``dispatch``, redis only in ``localfarm``. Never the CLI.
"""

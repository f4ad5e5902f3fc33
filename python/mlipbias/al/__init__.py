"""Active learning with uncertainty-biased MD (seed 002): ``mlipbias al CONFIG.yaml``.

- :mod:`mlipbias.al.config`: the configuration (seed 002's settings as defaults), its template.
- :mod:`mlipbias.al.loop`: :class:`ActiveLearning`, the resumable loop of generations.
- :mod:`mlipbias.al.tasks`: the Dask tasks (a walker, the label of one candidate).
- :mod:`mlipbias.al.report`: the per-generation summary table, CSV/JSON and plots.

The explorers themselves live in :mod:`mlipbias.dynamics`.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def dask_client(settings, log=print):
    """A dask.distributed Client: connected to ``settings.scheduler`` when given, else to a new
    LocalCluster of ``settings.workers`` one-thread workers (processes unless
    ``settings.processes`` is false), closed on exit."""
    from dask.distributed import Client, LocalCluster

    if settings.scheduler:
        client = Client(settings.scheduler)
        log(f"dask: connected to {settings.scheduler} ({len(client.scheduler_info()['workers'])} workers)")
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=settings.workers,
        threads_per_worker=1,
        processes=settings.processes,
        dashboard_address=None,
    )
    client = Client(cluster)
    kind = "processes" if settings.processes else "threads"
    log(f"dask: local cluster of {settings.workers} worker {kind}")
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def run_active_learning(config, *, client=None, progress: bool = True, log=print) -> list[dict]:
    """Run or resume the loop of ``config`` (an :class:`mlipbias.al.config.ALConfig`) on
    ``client`` (a dask.distributed Client; one is made from ``config.dask`` when None).
    Returns the per-generation summary rows."""
    from mlipbias.al.loop import ActiveLearning

    if client is not None:
        return ActiveLearning(config, client, progress=progress, log=log).run()
    with dask_client(config.dask, log=log) as own:
        return ActiveLearning(config, own, progress=progress, log=log).run()

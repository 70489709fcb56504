"""Launchers of the local stack: real servers as child processes on loopback.

There is no Docker on the development and CI machines, so `dnc up` and the tests run
plain processes bound to loopback, one module a service:

* :mod:`~infra.launch.redis_server`: Debian's ``redis-server``, options on the command
  line; :mod:`~infra.launch.redis_cluster`: masters with a replica each.
* :mod:`~infra.launch.kafka_broker`: a KRaft broker+controller in one JVM, from the jars
  :mod:`~infra.launch.kafka_jars` fetches (its config in :mod:`~infra.launch.kafka_config`);
  :mod:`~infra.launch.kafka_cluster`: several such nodes.
* :mod:`~infra.launch.stack`: :class:`~infra.launch.stack.LocalStack`, Kafka and Redis
  together in one directory.

The one interface (:mod:`infra.launch.process`): every ``start_*`` returns a
:class:`~infra.launch.process.RunningService` — ``address``, ``process`` (its pid, for the
fault drills' signals), ``log_path``, ``stop(timeout)`` (SIGTERM, then SIGKILL) and
``kill()`` (a crash); restarting on the same data and ports is the launcher's
``start_*`` again with the handle's ``data_dir`` and ports.  Whatever fails raises
:class:`~infra.launch.process.ServiceError`: what failed, what to do, the log's tail.
Every service started is stopped at interpreter exit.  Importing has no side effects.

PostgreSQL, Prometheus and Toxiproxy have launchers of their own beside this package
(``infra/postgres_service.py``, ``infra/prometheus_service.py``, ``infra/toxiproxy.py``),
built on the same interface.
"""

"""The process-manager runtime: runs :mod:`esflow.domain.process` definitions on :mod:`processors.loop`.

:mod:`~processors.process.manager` is the step (router and manager),
:mod:`~esflow.messaging.process_records` the instance record on the state topic (in the library: the
``process_instances`` projection reads it too), :mod:`~processors.process.store` its restore.
"""

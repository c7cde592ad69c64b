"""The process-manager runtime: runs :mod:`esflow.domain.process` definitions on the transactional shell.

:mod:`~processors.process.manager` is the step (router and manager), :mod:`~processors.process.records`
the instance record on the state topic, :mod:`~processors.process.store` its restore.
"""

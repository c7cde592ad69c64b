"""The process-manager runtime: runs :mod:`esflow.domain.process` definitions on :mod:`processors.loop`.

:mod:`~processors.process.manager` is the step (router and manager), :mod:`~processors.process.records`
the instance record on the state topic, :mod:`~processors.process.store` its restore.
"""

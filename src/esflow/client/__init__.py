"""The command bus: build command envelopes, send them, await their answers.

It lives in the library because two deployables send commands: ``producers`` (the CLI and the load
generator) and the API. Deployables never import each other, so what both need is shared here.

- :mod:`~esflow.client.commands`: envelopes from names and fields;
- :mod:`~esflow.client.sender`: :class:`~esflow.client.sender.CommandClient` and its asyncio twin;
- :mod:`~esflow.client.results`: the answer listener;
- :mod:`~esflow.client.preflight`: fail fast when no processor runs.
"""

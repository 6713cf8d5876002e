"""An OpenAI-compatible HTTP server for a bundle: ``instit-edge serve BUNDLE``.

* :mod:`.protocol`: the request schema (OpenAI chat messages, content parts,
  ``data:`` image URLs, the ``instit`` extension) and the response / error shapes;
* :mod:`.engine`: one shared :class:`~instit_edge.runtime.session.EdgeSession`
  (its image and KV caches reused across requests), server-side marking,
  bounded admission (running + queued) and the worker thread that runs one
  model job at a time;
* :mod:`.app`: the FastAPI app factory (routes, auth, errors, streaming);
* :mod:`.commands`: the ``serve`` CLI command.
"""

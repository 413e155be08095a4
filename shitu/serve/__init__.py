"""``shitu serve``: the HTTP API and web page in front of one ``shitu.index.Index`` (needs the ``serve`` extra)."""

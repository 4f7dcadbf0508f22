"""hotswap: a prefork HTTP/WSGI server whose live upgrade never drops a request."""

__version__ = "0.1.0"

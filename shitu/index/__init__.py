"""An index of gallery photos: ``Index`` is the library API every caller uses (see ``shitu.index.api``)."""

from shitu.index.answers import Answer, Match
from shitu.index.api import Index

__all__ = ["Answer", "Index", "Match"]

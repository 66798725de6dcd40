"""Knowledge bases: documents read, chunked, embedded and indexed (dense + BM25) for search and grounded answers."""

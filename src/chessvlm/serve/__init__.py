"""`chessvlm serve`: the web page and JSON API (`app`), batching of concurrent reads
(`batching`) and upload limits (`uploads`)."""

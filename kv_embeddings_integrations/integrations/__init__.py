"""The framework adapters: LangChain, LlamaIndex, Haystack and MTEB, each its own module over the core.

Each imports its framework, so import the module you use (``kv_embeddings_integrations.integrations.langchain``);
the package's ``KVEmbeddings`` and ``KVEmbedding`` load theirs on first use.
"""

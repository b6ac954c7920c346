"""Open indexflow tables from other tools: query embeddings with a table's recipe, for LangChain and LlamaIndex.

`indexflow.integrations.query` needs nothing beyond indexflow; `.langchain` and `.llama_index`
import their framework when imported themselves (`pip install 'indexflow[interop]'`), and no
other indexflow module imports them.
"""

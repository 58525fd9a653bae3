"""recsys_tt: an LLM two-tower recommender, fine-tuned with LoRA, exported to FAISS and served with logged exploration.

Folders by floor, data flowing one way: ``data`` -> ``model`` -> ``export`` -> ``training`` | ``serving`` ->
``offline``, over the shared leaves ``files``, ``cli`` and ``plots``. A folder imports only from the floors below it
(checked in CI by import-linter; the contracts are in pyproject.toml).
"""

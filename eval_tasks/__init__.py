"""lm-evaluation-harness integration: the model adapter and the evaluation runner.

Importing this package switches the Hugging Face libraries to offline mode before they are
imported: evaluation never downloads, it reads the local cache or local task folders.
"""

import os

os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

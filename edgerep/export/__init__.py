"""From a deploy model to validated artifacts: target files, the pipeline (build -> validate -> publish), manifests.

``pipeline.export`` is the entry point; ``targets`` reads ``targets/*.toml``; ``manifest`` writes what ships beside
each artifact; ``validation`` decides whether an artifact computes what PyTorch computes.
"""

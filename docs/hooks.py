"""MkDocs hooks: pages generated from the code at build time, so they cannot drift from it.

- ``<!-- config-reference -->``: the configuration reference from the JSON schema
  (:func:`llm_compression.config_reference.config_reference_markdown`).
"""

MARKERS = {
    "<!-- config-reference -->": lambda: __import__(
        "llm_compression.config_reference", fromlist=["config_reference_markdown"]).config_reference_markdown(),
}


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - MkDocs hook signature
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown

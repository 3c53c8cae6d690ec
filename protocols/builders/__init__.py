"""Dataset builders: one module per builder, each `build(params, data_root, seed) -> Streams` registered
with `@register_builder` (and its --dry-run asset report with `@register_assets`). Discovered on first
use: a new builder is one new file here."""

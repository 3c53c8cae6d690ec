"""Leaderboards from run records alone: markdown, CSV, JSON and pictures.

Records -> entries (the runs whose specs are identical except for the seed, one run per distinct
seed) -> metrics recomputed from each record's raw results with the current code -> mean, std and
seed count per cell -> a main table per suite (one section per protocol: the protocol's headline
metrics, bold where not significantly worse than the best, a mean rank, costs), a page per protocol
with every metric and each entry's accuracy matrix, `leaderboard.csv` / `leaderboard.json`, PNG
heatmaps and curves, and a provenance footer.

Runs of one method that differ in any setting or in the weights are separate entries, labelled by
what differs (`finetune [train.lr=0.05]`). Reported numbers from papers (`reported/*.yaml`, shipped in
`clipbench.protocols` and in the results folder; format in `load_reported`) appear beside the entries
of the method and settings they name, never beside another. A record that cannot be read is named,
never silently dropped. Every name from a record reaches tables and pictures escaped.

Modules: `entries` (records -> rows), `stats` (headline metrics, significance), `tables` (markdown),
`reported` (papers' numbers), `figures` (pictures), `site` (the HTML site), `files` (writing and checking a folder)."""

from .entries import (  # noqa: F401 (the package's names, as when it was one module)
    LABEL_KEYS, escape, slug, spec_settings, Entry, NotApplicable, Loaded, _costs, _run, _label_value, _label,
    load, tidy, _entry_name,
)
from .stats import (  # noqa: F401 (the package's names, as when it was one module)
    BOLD_LEVEL, BOLD_RULE, _protocol, reported_metrics, headline_of, ranked_metrics, not_worse, bold_entries,
    mean_ranks,
)
from .tables import (  # noqa: F401 (the package's names, as when it was one module)
    COST_COLUMNS, Footnotes, fmt, cell_text, _cost, protocol_entries, protocol_na, recipe_label, main_table,
    provenance_footer, corrupt_section, _corrupt_of, INTRO, protocol_page, batch_size_note, markdown,
)
from .reported import (  # noqa: F401 (the package's names, as when it was one module)
    reported_files, REPORTED_FORMAT, load_reported, _same, setting_mismatches, reported_tables,
)
from .figures import (  # noqa: F401 (the package's names, as when it was one module)
    _plt, _save, mean_matrix, heatmap, seen_accuracy, retention_curve, curves,
)
from .files import (  # noqa: F401 (the package's names, as when it was one module)
    MANIFEST, _manifest, write, _prune, check,
)

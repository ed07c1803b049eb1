"""What comes out of the farm: reading stored images back verified by sha256 (``artifacts``),
image ``metadata`` (the A1111 ``parameters`` text, the JSON record), contact-sheet axes
(``sheets``), the HTML ``gallery``, ``stats`` and their ``stats_plot``, and watching a batch's
``progress``.

May import: ``farm.errors``, ``farm.jobs``, ``farm.models``, ``farm.ledger`` and ``farm.storage``
(``artifacts`` reads through them). Never the fleet or the CLI.
"""

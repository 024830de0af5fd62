"""One module per section of the report page; each ``render(inputs)`` returns its ``Section``
(None where the section does not apply) and draws the figures it links."""

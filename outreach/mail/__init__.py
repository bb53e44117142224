"""The protocol side: building messages, SMTP, IMAP, the sink, reading replies and
bounces, signed links. Nothing here imports the store or the models
(``tests/test_layout.py``): what it needs of them is handed in."""

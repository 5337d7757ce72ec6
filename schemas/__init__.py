"""The Avro schemas of every record (``*.avsc``) and their committed history (``history/<record>/v<n>.avsc``),
shipped as package data: ``campaigns.codec`` reads them from here, whether the project is installed in
editable mode or from a wheel."""

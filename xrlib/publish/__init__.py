"""Publishing: execute the chapters, write the generated pages and README section, build the HTML book.

Reads artifacts of the run folder, never imports studies (see :mod:`xrlib.publish.book`).
"""

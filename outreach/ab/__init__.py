"""The A/B test: which variant each prospect gets, what a reply counts for, and which variants a
review retires.

- :mod:`~outreach.ab.registry`: the factors and variants in the test, retire and restore.
- :mod:`~outreach.ab.assign`: the dispatcher's choice of variants for a new message.
- :mod:`~outreach.ab.attribution`: what a reply counts for; the tallies.
- :mod:`~outreach.ab.review`: the review's decisions and the digest.
- :mod:`~outreach.ab.report`: the report document (``ab report --json``);
  :mod:`~outreach.ab.html` its one-file HTML page.
- Pure, no store: :mod:`~outreach.ab.counts` (plain Python: counts, prior, reply delays),
  :mod:`~outreach.ab.index` (the assignment's index), :mod:`~outreach.ab.stats` (numpy and
  scipy: posteriors, P(best), the retire rule).

Importing the package loads none of them.
"""

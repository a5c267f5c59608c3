"""Federation (clauses 4.3.6, 5.9, 5.10, 5.11 and 6.3.17-18): context source
registrations, the subscriptions to them, and the forwarding of operations to the
context sources they name.

* :mod:`.registrations`: registration documents validated and compiled, the matching
  of a request against them, and their CRUD with the conflict rules;
* :mod:`.forward`: requests sent to context sources under the outbound policy, with
  ``Via``, loop detection, per-source timeouts and cooldowns;
* :mod:`.merge`: the answers of several sources merged into one.
"""

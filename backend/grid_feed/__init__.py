"""Grid feeds: a utility's demand-response server in, the coordinator's capacity topics out.

* `mapping`  OpenADR 2.0b events -> per-frame capacity, and the opt rule (pure; docs/grid-feed.md)
* `feed`     the VEN's state: events, days, profiles, outcomes -> actions (pure, no I/O)
* `ven`      the adapter: openleadr's VEN client + MQTT + the state dir (`hems grid-feed openadr`)
* `vtn`      openleadr's real VTN on loopback, for the lab and the tests
"""

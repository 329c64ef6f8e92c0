-- Rustynet control-plane schema, version 6: the NAT classification a node reports with its
-- candidates (`rustynet.domain.nat.NatClass` values: public, eim-port-preserving, eim, hard,
-- udp-blocked, unknown; the use case validates it), NULL until the node first reports one.

ALTER TABLE nodes ADD COLUMN nat_classification TEXT

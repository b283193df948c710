-- Name collisions of a gateway's last discovery run (JSON array), so collisions found by
-- a background resync are as visible as those a registration returns.
ALTER TABLE gateways ADD COLUMN collisions TEXT NOT NULL DEFAULT '[]';

-- How a virtual server names what it serves ('prefixed': {gateway}{sep}{name}; 'upstream':
-- the upstreams' own names) and the browser origins it admits (JSON array of patterns);
-- every protocol version a gateway was found to speak (JSON array: the session era's from
-- initialize, the stateless era's from server/discover).
ALTER TABLE servers ADD COLUMN naming TEXT NOT NULL DEFAULT 'prefixed';
ALTER TABLE servers ADD COLUMN allowed_origins TEXT NOT NULL DEFAULT '[]';
ALTER TABLE gateways ADD COLUMN protocol_versions TEXT NOT NULL DEFAULT '[]';

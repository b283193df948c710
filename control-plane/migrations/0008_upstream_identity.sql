-- As whom the Envoys call a gateway on a principal's behalf: the mode and its settings as
-- JSON (mode none | static | identity-header | token-exchange; default static, what every
-- gateway did before), and the token exchange's client secret, sealed like credentials.
ALTER TABLE gateways ADD COLUMN identity TEXT NOT NULL DEFAULT '{"mode":"static"}';
ALTER TABLE gateways ADD COLUMN identity_sealed TEXT;

-- Discovered items the last discovery run left out (an invalid name, a definition over the
-- size limit), as a JSON array, shown on the gateway like its collisions.
ALTER TABLE gateways ADD COLUMN skipped TEXT NOT NULL DEFAULT '[]';

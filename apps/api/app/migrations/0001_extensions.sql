-- btree_gist lets an exclusion constraint mix equality (product) with range overlap
-- (rental dates): the guarantee that a product is never double-booked. It is a trusted
-- extension, so the database owner may create it without superuser rights.
CREATE EXTENSION IF NOT EXISTS btree_gist;

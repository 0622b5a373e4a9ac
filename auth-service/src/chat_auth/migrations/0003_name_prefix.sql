-- Users by the start of their name (svc.auth.users `prefix`: completion when
-- inviting or messaging by name). text_pattern_ops serves `LIKE 'abc%'`
-- whatever the database's collation.
CREATE INDEX users_name_prefix ON users (name_lower text_pattern_ops);

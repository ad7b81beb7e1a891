# @summary A user or group name as Debian's adduser accepts it by default (NAME_REGEX).
type Mw_experimental::Account = Pattern[/\A[a-z_][-a-z0-9_]{0,31}\z/]

# @summary An absolute, normalised path, as the binary requires it.
#
# No empty, `.` or `..` component and no trailing `/`.
type Mw_experimental::Path = Pattern[/\A(\/(?!\.\.?(\/|\z))[^\/\0\n]+)+\z/]

# @summary The package's `ensure`: present, installed, latest or a Debian version.
type Mw_experimental::Package_ensure = Variant[
  Enum['present', 'installed', 'latest'],
  Pattern[/\A[0-9][-.+~:a-zA-Z0-9]*\z/],
]

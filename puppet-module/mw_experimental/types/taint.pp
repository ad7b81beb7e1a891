# @summary A Kubernetes node taint, as the configuration file's `kubernetes.taints` entries.
type Mw_experimental::Taint = Struct[{
    key             => String[1],
    Optional[value] => String,
    effect          => Enum['NoSchedule', 'PreferNoSchedule', 'NoExecute'],
}]

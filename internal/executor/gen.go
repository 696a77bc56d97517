package executor

//go:generate go tool bpf2go -cc clang-14 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type vip_key -type vip_info -type svc_key -type svc_info -type svc_slot -type backend -type flow_key -type flow_head -type flow_body -type flow_bucket -type vip_filter -type affinity_key -type affinity_val -type backend_stats -type svc_stats -type vip_stats -type flow_event -type if_mac -type dp_id -type vip_slot -type member -type member_list -type pick_window dispatch ../../bpf/dispatch.c -- -I../../bpf
//go:generate go tool bpf2go -cc clang-14 -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -target bpfel -type steer_route steer ../../bpf/steer.c -- -I../../bpf

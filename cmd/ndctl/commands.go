package main

// commandTree returns ndctl's commands: ND's nouns (cluster, port, server)
// with their verbs, the read commands, and the lab.
func commandTree() *command {
	root := &command{subs: []*command{
		{name: "cluster", summary: "virtual IP addresses (VIPs) served", help: `
A cluster is a VIP with its ports. Every change is applied to the running
dispatcher at once; save it with 'ndctl config save'.`, subs: []*command{
			{name: "add", args: "VIP [PORT[/PROTO]...]", run: clusterAdd,
				summary: "add a VIP, with its first ports",
				help: `
A VIP needs at least one port: give its first ports here (servers are added
with 'ndctl server add'). The flags apply to every port given.`},
			{name: "remove", args: "VIP", run: clusterRemove,
				summary: "remove a VIP with all its ports and servers"},
			{name: "list", run: reader(clusterViews, writeClusters), read: true,
				summary: "list VIPs, their ports and how many servers each has"},
		}},
		{name: "port", summary: "ports of a VIP", help: `
A port is a VIP's port number and protocol, with its affinity (sticky time),
its weight bound and its servers.`, subs: []*command{
			{name: "add", args: "VIP PORT[/PROTO]", run: portAdd,
				summary: "add a port to a VIP"},
			{name: "remove", args: "VIP PORT[/PROTO]", run: portRemove,
				summary: "remove a port and its servers"},
		}},
		{name: "server", summary: "real servers of a port: add, weigh, quiesce", help: `
A server is a real server's address on a port. Its weight is its share of new
flows; a quiesced server gets no new flows while its established ones continue.`,
			subs: []*command{
				{name: "add", args: "VIP PORT[/PROTO] ADDRESS", run: serverAdd,
					summary: "add a server to a port"},
				{name: "remove", args: "VIP PORT[/PROTO] ADDRESS", run: serverRemove,
					summary: "remove a server from a port"},
				{name: "set", args: "VIP PORT[/PROTO] ADDRESS", run: serverSet,
					summary: "change a server's weight, quiesce or bring it back",
					help: `
Give --weight, --quiesce or --unquiesce (or a weight and one of the others),
--fixed or --managed. A quiesced server keeps its weight for when it is
brought back; a fixed one keeps its weight whatever the manager finds.`},
			}},
		{name: "manager", summary: "the feedback loop that sets weights: report and settings", help: `
Every interval the manager combines each server's metrics (active flows, new
flows, advisor latency, host metrics) into a Load Metric Index and moves the
weights toward the inverse of the load, committing them when they moved by
more than the sensitivity.`, subs: []*command{
			{name: "report", run: reader(Client.ManagerReport, writeManagerReport), read: true,
				summary: "per port: each server's metrics, LMI, weight and the last decision"},
			{name: "set", run: managerSet,
				summary: "change interval, proportions, smoothing, sensitivity, policy live",
				help: `
Changes go into the running configuration (save them with 'ndctl config
save'). --proportions takes ACTIVE,NEW,ADVISOR,HOST in percent, summing to
100; with --port VIP/PORT[/PROTO] they become that port's own, and
--reset-port makes the port follow the manager's again.`},
		}},
		{name: "ha", summary: "high availability: this node's group, planned takeover", help: `
Two or more dispatchers form a group (the ha section of their configuration):
the active one holds the VIPs and streams its flows and configuration to the
standbys, which take over when it fails.`, subs: []*command{
			{name: "status", run: reader(Client.HAStatus, writeHAStatus), read: true,
				summary: "this node's state, its peers, and the counters (rejected messages included)"},
			{name: "takeover", run: haTakeover,
				summary: "make this node the active one, in an orderly handover that loses no flow"},
		}},
		{name: "bgp", summary: "BGP: the sessions with the routers, the VIPs announced, drain", help: `
With a bgp section ndd announces each VIP it can serve (some server of the VIP
takes new flows, the data plane is attached) to its BGP peers as a host route,
and withdraws it when it cannot, when drained, and when ndd stops.`, subs: []*command{
			{name: "status", run: reader(Client.BGPStatus, printBGPStatus), read: true,
				summary: "the sessions (state, uptime, prefixes) and every VIP's route: announced, or why not"},
			{name: "drain", run: bgpDrain,
				summary: "withdraw every VIP; established flows keep being forwarded",
				help: `
The routers stop sending new flows here once they have the withdrawal; what
still arrives is forwarded as before. The drain lasts until 'ndctl bgp
undrain', across restarts of ndd that take the pinned data plane over (not
after 'ndd --destroy' or a reboot).`},
			{name: "undrain", run: bgpUndrain,
				summary: "announce the servable VIPs again"},
		}},
		{name: "agent", summary: "host-metric agents on the servers", subs: []*command{
			{name: "status", run: reader(Client.Agents, writeAgents), read: true,
				summary: "every polled agent: its last report, or why its metrics are disabled"},
		}},
		{name: "advisor", summary: "health and latency probes of the servers", subs: []*command{
			{name: "status", run: reader(Client.Advisors, writeAdvisors), read: true,
				summary: "every advisor's targets: up or down, latency, last error"},
		}},
		{name: "status", run: statusCmd, read: true,
			summary: "servers, states, weights and flow rates of every port",
			help: `
For each VIP:port, a table of its servers: state (up, quiesced, unresolved,
local), the weight the data plane uses, new flows per second, active flows and
packets per second. --watch redraws it every second until interrupted.`},
		{name: "flows", args: "[VIP [PORT[/PROTO]]]", run: flowsCmd, read: true,
			summary: "the connection table: which client's flow went to which server",
			help:    flowsHelp},
		{name: "events", run: eventsCmd, read: true,
			summary: "what ndd did recently; --follow for what it does next",
			help: `
Prints ndd's recent events: configuration applied, interfaces attached,
servers resolved or unreachable, weights committed. With --follow, keeps
printing new ones until interrupted.`},
		{name: "config", summary: "the running configuration", subs: []*command{
			{name: "show", run: configShow, read: true,
				summary: "print the running configuration (YAML; --json for JSON)"},
			{name: "apply", args: "FILE", run: configApply,
				summary: "make FILE the running configuration, changing only what differs",
				help: `
The file is checked here first, then by ndd, which applies only the difference
from the running configuration. "-" reads standard input. A change to a
data_plane setting or to api.socket needs a restart of ndd and is refused.`},
			{name: "save", args: "FILE", run: configSave,
				summary: "write the running configuration to FILE",
				help: `
Writes every setting, defaults included, so that the file means the same
whatever later defaults become. The file is created mode 0600: it may hold the
API token.`},
			{name: "reload", run: configReload,
				summary: "make ndd re-read its configuration file (like SIGHUP)"},
		}},
		{name: "lab", run: labCmd,
			summary: "build a namespace lab, run nd in it and show it balancing traffic",
			help:    labHelp},
		{name: "version", run: versionCmd, read: true,
			summary: "print ndctl's build: version, VCS revision and time, Go version"},
		{name: "completion", args: "bash", run: completionCmd,
			summary: "print a bash completion script for ndctl",
			help: `
The script completes commands, subcommands, flags and the values of flags
that take one of a few words (--protocol tcp|udp). Load it with
  source <(ndctl completion bash)
or install it as /usr/share/bash-completion/completions/ndctl (the Debian
package does).`},
		{name: "help", args: "[COMMAND...]", run: helpCmd,
			summary: "help on ndctl or on a command"},
	}}
	var link func(c *command)
	link = func(c *command) {
		for _, sc := range c.subs {
			sc.parent = c
			link(sc)
		}
	}
	link(root)
	return root
}

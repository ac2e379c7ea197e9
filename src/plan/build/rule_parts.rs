//! Short constructors of matches and targets, so that the rule lists of the builder read next to
//! Istio's `-p tcp --dport N -j RETURN`.

use crate::plan::model::{
    Chain, Family, GroupRef, Match, Net, Protocol, Target, passthrough_source,
};
use ipnetwork::IpNetwork;

pub(super) fn tcp() -> Match {
    Match::Protocol(Protocol::Tcp)
}
pub(super) fn udp() -> Match {
    Match::Protocol(Protocol::Udp)
}
pub(super) fn dport(port: u16) -> Match {
    Match::DestinationPorts {
        ports: vec![port],
        negated: false,
    }
}
pub(super) fn not_dports(ports: Vec<u16>) -> Match {
    Match::DestinationPorts {
        ports,
        negated: true,
    }
}
pub(super) fn iif(name: &str) -> Match {
    Match::InInterface(name.to_owned())
}
pub(super) fn oif(name: &str) -> Match {
    Match::OutInterface(name.to_owned())
}
pub(super) fn dst(net: impl Into<Net>) -> Match {
    Match::Destination {
        net: net.into(),
        negated: false,
    }
}
pub(super) fn not_dst(net: impl Into<Net>) -> Match {
    Match::Destination {
        net: net.into(),
        negated: true,
    }
}
pub(super) fn src(net: impl Into<Net>) -> Match {
    Match::Source {
        net: net.into(),
        negated: false,
    }
}
pub(super) fn uid(uid: u32, negated: bool) -> Match {
    Match::UidOwner { uid, negated }
}
pub(super) fn gid(gid: u32, negated: bool) -> Match {
    Match::GidOwner {
        gid: GroupRef::Id(gid),
        negated,
    }
}
pub(super) fn marked(value: u32) -> Match {
    Match::Mark {
        value,
        negated: false,
    }
}
pub(super) fn jump(chain: Chain) -> Target {
    Target::Jump(chain)
}

/// [`passthrough_source`] as a host network, for a rule's source match or lo's address.
pub(super) fn passthrough_net(family: Family) -> IpNetwork {
    IpNetwork::from(passthrough_source(family))
}

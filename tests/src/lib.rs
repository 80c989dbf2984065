//! The network lab: namespaces, NAT routers, an identity provider, and the real binaries.

//! DHCPv4: the message format, the client state machine, the socket.

pub mod check;
pub mod client;
pub mod packet;
pub mod socket;

pub use client::{Action, Client, Destination, Lease};
pub use packet::{Message, MessageType, ParseError};
pub use socket::{DhcpSocket, RawReceiver};

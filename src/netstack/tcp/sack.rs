//! TEMPORARY placeholder until branch tcp-parts lands sack.rs.
use smoltcp::wire::TcpSeqNumber;
#[derive(Debug, Clone, Default)]
pub struct Scoreboard {
    blocks: Vec<(TcpSeqNumber, TcpSeqNumber)>,
}
impl Scoreboard {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, _snd_una: TcpSeqNumber, blocks: &[(TcpSeqNumber, TcpSeqNumber)]) {
        for b in blocks {
            if !self.blocks.contains(b) && self.blocks.len() < 16 {
                self.blocks.push(*b);
            }
        }
    }
    pub fn on_cumulative_ack(&mut self, snd_una: TcpSeqNumber) {
        self.blocks.retain(|b| b.1 > snd_una);
        if self.blocks.is_empty() {
            self.blocks = Vec::new();
        }
    }
    pub fn is_sacked(&self, start: TcpSeqNumber, end: TcpSeqNumber) -> bool {
        self.blocks.iter().any(|b| b.0 <= start && end <= b.1)
    }
    pub fn sacked_bytes(&self) -> u32 {
        0
    }
    pub fn is_lost(&self, _seq: TcpSeqNumber, _mss: u32) -> bool {
        false
    }
    pub fn next_hole(
        &self,
        _snd_una: TcpSeqNumber,
        _after: TcpSeqNumber,
        _snd_nxt: TcpSeqNumber,
    ) -> Option<(TcpSeqNumber, TcpSeqNumber)> {
        None
    }
    pub fn clear(&mut self) {
        self.blocks = Vec::new();
    }
}

/* cancel_signal.h - the handler of the signal that cancels a running call
 * (hypervisor/device.pyx installs it once per process, with /dev/kvm). */
#ifndef HL_CANCEL_SIGNAL_H
#define HL_CANCEL_SIGNAL_H
#include <signal.h>
#include <string.h>

/* It does nothing: its only job is to make KVM_RUN return -EINTR in the thread
 * the signal is sent to. */
static void hl_cancel_handler(int sig) { (void)sig; }
static inline int hl_install_cancel_handler(int sig) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = hl_cancel_handler; /* no SA_RESTART: KVM_RUN must return EINTR */
  sigemptyset(&sa.sa_mask);
  return sigaction(sig, &sa, 0);
}
#endif

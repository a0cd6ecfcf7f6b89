/*
 * udpblast: the kernel baseline's traffic, as fast as one core can make it.
 *
 *   udpblast send DST_IP PORT PAYLOAD_BYTES SECONDS [CPU]
 *       sendmmsg() batches of BATCH datagrams to DST_IP:PORT for SECONDS;
 *       prints "sent PACKETS ELAPSED_SECONDS".
 *   udpblast recv PORT IDLE_MS [CPU]
 *       binds PORT, prints "ready", counts datagrams with recvmmsg() until
 *       none arrived for IDLE_MS after the first one (or for 10 s before it);
 *       prints "received PACKETS".
 *   CPU (0, 1, ...) pins the process to that CPU (sched_setaffinity); -1 or
 *   none leaves it to the scheduler. The kernel forwards a sent packet in its
 *   sender's context (veth -> backlog -> softirq on the same CPU), so where
 *   the senders run decides which cores do the forwarding.
 *
 * A send error such as ENOBUFS or ECONNREFUSED is counted as not sent and the
 * blast goes on: the receiver's count is what the benchmark reports.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_PAYLOAD 1472
#define FIRST_PACKET_WAIT_S 10

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *what) {
    fprintf(stderr, "udpblast: %s: %s\n", what, strerror(errno));
    return 1;
}

static int blast(const char *ip, int port, int payload, double seconds) {
    static char data[MAX_PAYLOAD];
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    struct mmsghdr msgs[BATCH];
    struct iovec iov = {.iov_base = data, .iov_len = payload};
    long long sent = 0;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    if (payload < 0 || payload > MAX_PAYLOAD) {
        fprintf(stderr, "udpblast: PAYLOAD_BYTES must be 0..%d\n", MAX_PAYLOAD);
        return 2;
    }
    if (inet_pton(AF_INET, ip, &dst.sin_addr) != 1) {
        fprintf(stderr, "udpblast: DST_IP: not an IPv4 address: %s\n", ip);
        return 2;
    }
    if (fd < 0) return fail("socket");
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) return fail("connect");
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    double start = now_s(), elapsed = 0;
    while (elapsed < seconds) {
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0) sent += n;
        elapsed = now_s() - start;
    }
    printf("sent %lld %.6f\n", sent, elapsed);
    return 0;
}

static int count(int port, int idle_ms) {
    static char bufs[BATCH][MAX_PAYLOAD];
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(port),
                              .sin_addr = {htonl(INADDR_ANY)}};
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    struct timeval first_wait = {.tv_sec = FIRST_PACKET_WAIT_S};
    struct timeval idle = {.tv_sec = idle_ms / 1000, .tv_usec = (idle_ms % 1000) * 1000};
    int rcvbuf = 8 << 20;
    long long received = 0;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    if (fd < 0) return fail("socket");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (bind(fd, (struct sockaddr *)&any, sizeof any) < 0) return fail("bind");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &first_wait, sizeof first_wait) < 0)
        return fail("SO_RCVTIMEO");
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        iovs[i].iov_base = bufs[i];
        iovs[i].iov_len = MAX_PAYLOAD;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            return fail("recvmmsg");
        }
        if (received == 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &idle, sizeof idle);
        received += n;
    }
    printf("received %lld\n", received);
    return 0;
}

static int pin(const char *cpu_arg) {
    int cpu = atoi(cpu_arg);
    cpu_set_t set;
    if (cpu < 0) return 0;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0) return fail("sched_setaffinity");
    return 0;
}

int main(int argc, char **argv) {
    if ((argc == 6 || argc == 7) && strcmp(argv[1], "send") == 0) {
        if (argc == 7 && pin(argv[6])) return 1;
        return blast(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
    }
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "recv") == 0) {
        if (argc == 5 && pin(argv[4])) return 1;
        return count(atoi(argv[2]), atoi(argv[3]));
    }
    fprintf(stderr, "usage: udpblast send DST_IP PORT PAYLOAD_BYTES SECONDS [CPU]\n"
                    "       udpblast recv PORT IDLE_MS [CPU]\n");
    return 2;
}

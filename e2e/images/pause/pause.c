/*
 * The pod sandbox's pause process for the local cluster, which cannot pull
 * registry.k8s.io/pause. It holds the pod's namespaces open and does nothing else:
 * sleep in pause(), exit 0 on SIGINT/SIGTERM (the kubelet's stop), and reap zombies when
 * the pod shares its PID namespace (the pause process is then PID 1 for the whole pod).
 * As PID 1 the kernel drops signals that have no handler, so every signal it must obey
 * gets an explicit handler.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    int saved = errno; /* a handler must not clobber errno for the code it interrupted */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

static void say(int fd, const char *msg) {
    ssize_t n = write(fd, msg, strlen(msg));
    (void)n;
}

static int handle(int sig, void (*fn)(int), int flags) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = fn;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        say(1, "maestro-pause 1\n");
        return 0;
    }
    if (getpid() != 1) {
        say(2, "pause: warning: not running as PID 1\n");
    }
    if (handle(SIGINT, on_stop, 0) < 0 || handle(SIGTERM, on_stop, 0) < 0 ||
        handle(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) < 0) {
        say(2, "pause: sigaction failed\n");
        return 1;
    }
    for (;;) {
        pause();
    }
    return 42; /* unreachable */
}

/* The e2e inotify workload: watches each path given (once, at start) and prints a numbered
 * line per event, "event N wd W mask M name". The numbers continue across a checkpoint only
 * if the process was restored, and events after it prove the restored watches still fire. */
#include <stdio.h>
#include <sys/inotify.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = inotify_init();
    if (fd < 0) { perror("inotify_init"); return 1; }
    for (int i = 1; i < argc; i++)
        if (inotify_add_watch(fd, argv[i], IN_MODIFY | IN_CREATE | IN_ATTRIB) < 0) { perror(argv[i]); return 1; }
    printf("watching %d\n", argc - 1); fflush(stdout);
    char buf[4096] __attribute__((aligned(8))); unsigned long n = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0) { perror("read"); return 1; }
        for (char *p = buf; p < buf + r; p += sizeof(struct inotify_event) + ((struct inotify_event *)p)->len) {
            struct inotify_event *e = (struct inotify_event *)p;
            printf("event %lu wd %d mask %#x %s\n", ++n, e->wd, e->mask, e->len ? e->name : "");
        }
        fflush(stdout);
    }
}
